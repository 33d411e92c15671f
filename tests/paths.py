"""Where the tests find the repository's own files."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The committed Fashion-MNIST reference models, shipped in the demo package.
FASHION_MNIST_MODELS = REPO / "controller" / "demo" / "reference"
