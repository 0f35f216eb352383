"""Zero-shot classification with a prompt-template ensemble (CLIP, Radford et al. 2021, §3.1.4).

For each class c, the L2-normalised text embeddings of every template filled with c ("a photo of a {c}.", ...) are
averaged and the mean is re-normalised; an image is assigned to argmax_c <img/||img||, class_emb_c>
(``shared/reference/algorithms.md`` §0; SafeCLIP/CleanCLIP ``get_zeroshot_metrics``). :data:`CIFAR_TEMPLATES` are
the 18 templates OpenAI published for CIFAR-10 (CLIP repo, ``notebooks/Prompt_Engineering_for_ImageNet.ipynb`` /
``data/prompts.md``).

The same :class:`ZeroShotClassifier` serves clean accuracy and attack evaluation (ASR), so both come from one
classifier.

Example::

    >>> import torch
    >>> from clpoison.eval.zeroshot import ZeroShotClassifier
    >>> # rigged towers: the text tower's embedding names the class, the image tower reads it from pixel (0,0,0)
    >>> clf = ZeroShotClassifier.from_features(torch.eye(3), lambda x: torch.eye(3)[x[:, 0, 0, 0].long()])
    >>> clf.predict(torch.tensor([2, 0, 1]).view(3, 1, 1, 1).expand(3, 3, 4, 4).to(torch.uint8)).tolist()
    [2, 0, 1]
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..data.augment import EvalTransform
from ..errors import ConfigError

CIFAR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c}.",
    "a blurry photo of a {c}.",
    "a black and white photo of a {c}.",
    "a low contrast photo of a {c}.",
    "a high contrast photo of a {c}.",
    "a bad photo of a {c}.",
    "a good photo of a {c}.",
    "a photo of a small {c}.",
    "a photo of a big {c}.",
    "a photo of the {c}.",
    "a blurry photo of the {c}.",
    "a black and white photo of the {c}.",
    "a low contrast photo of the {c}.",
    "a high contrast photo of the {c}.",
    "a bad photo of the {c}.",
    "a good photo of the {c}.",
    "a photo of the small {c}.",
    "a photo of the big {c}.",
)


@torch.no_grad()
def encode_images(model, images: torch.Tensor, transform: Callable, batch_size: int = 512,
                  device: Optional[torch.device] = None, channels_last: bool = False) -> torch.Tensor:
    """L2-normalised CLIP image embeddings (N,D) on the CPU for uint8 images, in eval mode."""
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = [model.encode_image(transform(images[s : s + batch_size].to(device)).contiguous(memory_format=fmt)).float().cpu()
           for s in range(0, len(images), batch_size)]
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: Sequence[str], context_length: int, batch_size: int = 1024,
                 device: Optional[torch.device] = None) -> torch.Tensor:
    """L2-normalised CLIP text embeddings (M,D) on the CPU, in eval mode."""
    device = device or next(model.parameters()).device
    tokens = tokenizer.encode(list(texts), context_length)
    was = model.training
    model.eval()
    out = []
    for s in range(0, len(tokens), batch_size):
        t = tokens[s : s + batch_size]
        t = t[:, : int((t != 0).sum(1).max())]
        out.append(model.encode_text(t.to(device)).float().cpu())
    model.train(was)
    return torch.cat(out)


def class_text_features(model, tokenizer, class_names: Sequence[str], templates: Sequence[str], context_length: int,
                        device: Optional[torch.device] = None) -> torch.Tensor:
    """(C,D): per class, the mean of the normalised template embeddings, re-normalised."""
    if not class_names:
        raise ConfigError("zero-shot needs class names; this dataset has none (use a labelled test split)")
    if not templates or any("{c}" not in t for t in templates):
        raise ConfigError("zero-shot templates must be non-empty and each contain '{c}'")
    texts = [t.format(c=c.replace("_", " ")) for c in class_names for t in templates]
    emb = encode_texts(model, tokenizer, texts, context_length, device=device).view(len(class_names), len(templates), -1)
    return F.normalize(F.normalize(emb, dim=-1).mean(1), dim=-1)


class ZeroShotClassifier:
    """``ZeroShotClassifier(model, tokenizer, class_names, templates).predict(images_uint8) -> LongTensor``.

    ``model`` is a :class:`~clpoison.models.clip_model.CLIPModel` (or anything with ``encode_image``/``encode_text``);
    images go through ``transform`` (default :class:`EvalTransform` with CIFAR normalisation at ``image_size``).
    """

    def __init__(self, model=None, tokenizer=None, class_names: Sequence[str] = (), templates: Sequence[str] = CIFAR_TEMPLATES,
                 transform: Optional[Callable] = None, device: Optional[torch.device] = None, batch_size: int = 512,
                 context_length: Optional[int] = None, image_size: int = 32, channels_last: bool = False,
                 embed_model=None) -> None:
        self.model, self.tokenizer = model if model is not None else embed_model, tokenizer
        self.class_names, self.templates = list(class_names), list(templates)
        self.batch_size, self.channels_last = batch_size, channels_last
        self.device = device or (next(self.model.parameters()).device if self.model is not None else torch.device("cpu"))
        self.transform = transform or EvalTransform(image_size).to(self.device)
        self._embed = None
        self.text_features: Optional[torch.Tensor] = None  # (C,D); None for a bare image embedder (embed_model)
        if model is not None:
            ctx = context_length or getattr(getattr(model, "text", None), "context_length", 77)
            self.text_features = class_text_features(model, tokenizer, self.class_names, self.templates, ctx, self.device)

    @classmethod
    def from_features(cls, text_features: torch.Tensor, embed: Callable[[torch.Tensor], torch.Tensor],
                      class_names: Optional[Sequence[str]] = None) -> "ZeroShotClassifier":
        """A classifier from given class embeddings and an image-embedding function (tests, custom towers)."""
        self = cls(None, None, class_names or [str(i) for i in range(len(text_features))])
        self.text_features = F.normalize(text_features.float(), dim=-1)
        self._embed = embed
        return self

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (N,D) for uint8 images."""
        if self._embed is not None:
            return F.normalize(self._embed(images).float(), dim=-1)
        return encode_images(self.model, images, self.transform, self.batch_size, self.device, self.channels_last)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.text_features is None:
            raise ConfigError("this ZeroShotClassifier has no class text features (no class names); it can only embed")
        return self.embed(images) @ self.text_features.t()

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).argmax(1).cpu()

    def top1(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        labels = torch.as_tensor(labels)
        keep = labels >= 0
        if not bool(keep.any()):
            raise ConfigError("zero-shot top-1 needs labelled test images")
        return float((self.predict(images[keep]) == labels[keep].cpu()).float().mean())
