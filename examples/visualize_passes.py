"""Draw the Hessian-vector pass of an MLP and of a small CNN (SVG with graphviz's `dot`, else .dot source).

    python examples/visualize_passes.py
"""
import shutil

import rgraph as rg


def main():
    suffix = ".svg" if shutil.which("dot") else ".dot"
    for name, graph in (("mlp", rg.nn.mlp([8, 16, 4])), ("small_cnn", rg.nn.small_cnn())):
        prog = rg.compile(graph)
        path = prog.show("hv", f"{name}_hv{suffix}")
        cost = prog.cost("hv", batch_size=128)
        print(f"wrote {path}: {len(prog.module.nodes(['hv']))} nodes, {cost['vector']['gemms']} GEMMs per hv call")
    print(prog.text("jv"))


if __name__ == "__main__":
    main()
