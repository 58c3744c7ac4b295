"""MNIST as arrays (tfds, prepared once) and the on-device augmentation of training batches."""
