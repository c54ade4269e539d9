"""GENIE's derivative head (Dockhorn et al. 2022) on the digits UNet, registered as the "genie" head of digits."""
