"""The base of every CLIP defense that changes the training objective (SafeCLIP, RoCLIP, CleanCLIP): it wraps a
:class:`~clpoison.methods.clip.CLIP` method and **its state dict is the CLIP's**, so a defended run's checkpoint
and ``clip.safetensors`` load wherever a plain CLIP one does (``clpoison evaluate``, ``clpoison scan``). Subclasses
add their own ``loss`` (pure) and state updates.
"""

from __future__ import annotations

from torch import nn

from .base import Method


class WrappedCLIP(Method):
    """Delegates the model, encoder, tokenizer and state dict to the wrapped CLIP ``clip``."""

    modality = "image-text"

    def __init__(self, clip: Method) -> None:
        super().__init__()
        self.clip = clip

    @property
    def model(self) -> nn.Module:
        return self.clip.model

    @property
    def encoder(self) -> nn.Module:
        return self.clip.encoder

    @property
    def tokenizer(self):
        return self.clip.tokenizer

    def state_dict(self, *args, **kwargs):
        return self.clip.state_dict(*args, **kwargs)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        return self.clip.load_state_dict(state, strict=strict, assign=assign)
