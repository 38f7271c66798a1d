"""The images: loading CIFAR-10 safely, synthetic data in its layout, the
download, and turning stored uint8 images into the network's input."""
