"""Regenerate the figures in docs/figures from the code (needs graphviz's `dot`).

    python docs/make_figures.py
"""
import os

import rgraph as rg

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures")


def main():
    os.makedirs(HERE, exist_ok=True)
    mlp = rg.compile(rg.nn.mlp([4, 6, 3]))
    for entry in ("gv", "hv"):
        print("wrote", mlp.show(entry, os.path.join(HERE, f"mlp_{entry}.svg")))
    cnn = rg.compile(rg.nn.small_cnn(channels=(4,)))
    print("wrote", cnn.show("gv", os.path.join(HERE, "small_cnn_gv.svg")))


if __name__ == "__main__":
    main()
