"""The data path: datasets -> publish -> manifests -> offset plans -> the stream."""
