"""Optimisers on flat parameter vectors: CG, Newton-CG, KFAC, FITRE, SGD and Adam."""
