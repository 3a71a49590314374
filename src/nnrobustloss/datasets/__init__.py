"""Data sources (phantom, KiTS23, MM-WHS, folder) and their conversion to nnU-Net raw datasets."""
