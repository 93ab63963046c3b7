"""Train the default small CNN on scikit-learn's digits with FITRE (what `rgraph train` does by default).

    python examples/train_digits.py
"""
from rgraph import data, nn
from rgraph.train import train


def main():
    dataset = data.load("digits")
    graph = nn.small_cnn(input_shape=dataset.input_shape, num_classes=dataset.num_classes, l2=1e-4)
    print(f"{graph.name} on {dataset}")
    theta, history = train(graph, dataset, "fitre", epochs=5, batch_size=128, progress=False)
    print(f"final test accuracy {100 * history[-1]['test_accuracy']:.2f}% after {history[-1]['time']:.1f} s")


if __name__ == "__main__":
    main()
