"""Generate the documentation's figures: docs/figures/*.svg.

    python docs/make_figures.py [OUT_DIR]

Draws the Hessian-vector pass of a small MLP (full, and with elementwise chains collapsed) and, when
this build has the convolution ops, of a small CNN (one box per layer, tag and stage). Needs
graphviz's `dot` program. The output is deterministic, so regenerating the figures only changes them
when the drawings or the compiler change.
"""
import os
import shutil
import sys

import rgraph as rg

HERE = os.path.dirname(os.path.abspath(__file__))


def figures():
    """(file name, program, entry, drawing options) for every figure."""
    mlp = rg.compile(rg.nn.mlp([4, 8, 3], activation="swish", l2=1e-3))
    yield "mlp_hv.svg", mlp, "hv", {}
    yield "mlp_hv_collapsed.svg", mlp, "hv", {"collapse": True}
    yield "mlp_gv.svg", mlp, "gv", {}
    if hasattr(rg.nn, "small_cnn"):
        cnn = rg.compile(rg.nn.small_cnn(input_shape=(1, 8, 8), num_classes=10, channels=(4, 8)))
        yield "small_cnn_hv.svg", cnn, "hv", {"collapse": "layers"}


def main(out_dir=os.path.join(HERE, "figures")):
    if shutil.which("dot") is None:
        sys.exit("make_figures: graphviz's `dot` program is needed (apt-get install graphviz)")
    os.makedirs(out_dir, exist_ok=True)
    for name, prog, entry, options in figures():
        path = os.path.join(out_dir, name)
        prog.show(entry, path, **options)
        print(f"wrote {path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
