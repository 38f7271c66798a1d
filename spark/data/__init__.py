"""The images: loading CIFAR-10 safely, synthetic data in its layout, the
download, your own images (CIFAR-100, MNIST IDX files, image folder trees,
Parquet; source.py picks the loader; convert.py writes Parquet), and turning
stored uint8 images into the network's input."""
