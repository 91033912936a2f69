"""The offline demo: a small CLIP pre-trained on Fashion-MNIST, its shifted few-shot task, the quickstart."""
