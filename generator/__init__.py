"""The face generators (VAE, DCGAN, WGAN-GP): image cache, DiffAugment, trainers, training loop,
sampling (apart from training) and the fidelity metrics (FID, KID, fd_mobilenet).
"""
