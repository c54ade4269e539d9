"""Distilled students of the digits checkpoint (KD, PD, CD), registered as heads of the checkpoint they come from."""
