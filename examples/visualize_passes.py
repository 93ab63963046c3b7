"""Draw the Hessian-vector pass of a small MLP and (when the conv ops exist) a small CNN.

    python examples/visualize_passes.py [OUT_DIR]

Writes OUT_DIR/mlp_hv.svg (and small_cnn_hv.svg, collapsed), plus the text listing mlp_hv.txt. Colours are
the pass tags (forward, backward, rforward, rbackward, gn); the batch stage (computed once per bind) and
the vector stage (run per CG iteration) are the two dashed clusters. Without graphviz's `dot` program the
drawings are written as .dot sources instead.
"""
import os
import shutil
import sys

import rgraph as rg


def draw(prog, name, out_dir, **options):
    suffix = ".svg" if shutil.which("dot") else ".dot"
    path = os.path.join(out_dir, f"{name}_hv{suffix}")
    prog.show("hv", path, **options)
    print(f"wrote {path}")


def main(out_dir="figures"):
    os.makedirs(out_dir, exist_ok=True)
    mlp = rg.compile(rg.nn.mlp([4, 8, 3], activation="swish"))
    draw(mlp, "mlp", out_dir)
    listing = mlp.text("hv")
    with open(os.path.join(out_dir, "mlp_hv.txt"), "w") as f:
        f.write(listing + "\n")
    print("\n".join(listing.splitlines()[:3]) + "\n...")
    if hasattr(rg.nn, "small_cnn"):
        cnn = rg.compile(rg.nn.small_cnn(input_shape=(1, 8, 8), num_classes=10, channels=(4, 8)))
        draw(cnn, "small_cnn", out_dir, collapse=True)
    else:
        print("no convolution ops in this build: skipping the small CNN")


if __name__ == "__main__":
    main(*sys.argv[1:])
