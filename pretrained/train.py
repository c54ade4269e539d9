"""Entry point of the training recipes: ``python -m pretrained.train {digits,features,lw,vdm,digits-v,kd,pd,cd,cond,genie,digits-edm,digits-flow} [options]``."""
from __future__ import annotations

import importlib
import sys

RECIPES = {"digits": "train_digits", "features": "train_features", "lw": "train_lw", "vdm": "train_vdm",
           "digits-v": "train_digits_v", "kd": "train_kd", "pd": "train_pd", "cd": "train_cd",
           "cond": "train_cond", "genie": "train_genie", "digits-edm": "train_families:main_edm",
           "digits-flow": "train_families:main_flow"}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in RECIPES:
        raise SystemExit(f"usage: python -m pretrained.train {{{','.join(RECIPES)}}} [options]")
    module, _, fn = RECIPES[argv[0]].partition(":")
    getattr(importlib.import_module(f".recipes.{module}", __package__), fn or "main")(argv[1:])


if __name__ == "__main__":
    main()
