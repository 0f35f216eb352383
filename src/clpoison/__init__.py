"""clpoison: attacks and defenses for contrastive pretraining (SimCLR, MoCo v2, BYOL, CLIP) under data poisoning."""

__version__ = "0.1.0"
