"""The image–text task (``method: clip``): caption data, tokenizer, model, zero-shot/retrieval/probe eval.

:func:`~clpoison.experiments.runner.run_experiment` calls these in order (see :mod:`.base`) — ``load`` → attack ``poison`` (on the
:class:`~clpoison.data.captions.CaptionSplits`) → defense ``filter`` → ``build_method`` (trains the BPE tokenizer on
the captions actually trained on, or loads ``method.params.tokenizer``; a resumed run reuses the ``tokenizer.json``
of its partial folder) → ``random_init_metrics`` (zero-shot of the untrained model: the control) → ``batches`` →
the engine's :class:`~clpoison.engine.Trainer` → ``evaluate`` → ``context`` (for :meth:`Attack.evaluate`).

Metrics: ``zeroshot_top1`` (prompt ensemble over the dataset's class names, on the labelled test split),
``recall_at_{K}_i2t`` / ``recall_at_{K}_t2i`` on the test pairs, ``knn_top1`` and ``linear_top1`` (the foundation's
kNN and linear probe on image-tower features), and the untrained model's (same architecture) zero-shot, retrieval
and linear probe as controls (``*_random_init``).

Evaluation sets separate from the training data (``eval.sets``, :mod:`clpoison.experiments.eval_sets`): each is
evaluated on its own (``results.json["eval_sets"][KEY]``); the *attack set* (the first labelled one, or
``eval.attack_set``) takes the place of the test split for zero-shot and the attacks (target class, targeted victims,
ASR), while retrieval stays on the caption test split. Metrics that cannot be measured are said on stderr and
recorded in ``results.json["skipped"]``.

Example (a 1-epoch run on 256 pairs, well under a minute)::

    >>> from clpoison.experiments.config import build_config
    >>> from clpoison.experiments.runner import run_experiment
    >>> cfg = build_config({"preset": "clip-small"}, ["train.epochs=1", "data.train_limit=256", "data.test_limit=64",
    ...                    "train.batch_size=64", "train.progress=false"])
    >>> import tempfile; res = run_experiment(cfg, tempfile.mkdtemp() + "/run")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from ...attacks import ATTACKS
from ...defenses import DEFENSES
from ...contexts import EvalContext
from ...data.captions.caption_loader import CaptionImageAugment, flat_captions
from ...data.captions.caption_readers import load_caption_splits
from ...data.captions.caption_shards import read_caption_shards
from ...data.shards.shard_batches import clip_batches
from ...data.shards.shard_set import StreamingCaptionSet
from ...data.captions import CaptionDataset, CaptionSplits
from ...data.datasets import ImageDataset, ImageSplits
from ...data.captions.tokenizer import CaptionTokenizer
from ...errors import ConfigError
from ...eval.encoder_eval import attack_context, evaluate_encoder
from ...eval.retrieval import retrieval_recall
from ...eval.zeroshot import CIFAR_TEMPLATES, ZeroShotClassifier, encode_texts
from ...methods import METHODS
from ...methods.base import Method
from ...methods.build import build_method
from ...utils.dist import is_main, local_batch_size, rank, world_size
from ..config import ExperimentConfig
from ..eval_sets import EvalSet, load_eval_sets
from ..sources import subset_train
from .base import TASKS, Task

TOKENIZER_NAME = "tokenizer.json"


def limit_pairs(ds: CaptionDataset, n: int | None) -> CaptionDataset:
    return ds if n is None or n >= len(ds) else ds.subset(torch.arange(n))


def resolve_method(cfg: ExperimentConfig) -> tuple[str, dict[str, Any]]:
    """``(method name, params)`` of a run: with ``model.init`` a CLIP run starts from that pretrained CLIP (method
    ``pretrained-clip``, path = ``model.init``, an open_clip model's tokenizer files from ``method.params.tokenizer``;
    the other CLIP params describe an architecture and are ignored)."""
    name, params, init = cfg.method.name, dict(cfg.method.params or {}), cfg.model.init
    if not init:
        return name, params
    if name == "clip":
        return "pretrained-clip", {"path": init, **({"tokenizer": params["tokenizer"]} if params.get("tokenizer") else {})}
    if params.get("path") and Path(params["path"]).expanduser().resolve() != Path(init):
        raise ConfigError(f"model.init='{init}' and method.params.path='{params['path']}' differ; give the "
                          "pretrained CLIP once")
    return name, {**params, "path": init}


def labelled(ds: CaptionDataset) -> bool:
    return bool(ds.class_names) and ds.labels is not None and bool((ds.labels >= 0).all()) and len(ds) > 0


@TASKS.register("image-text")
class ImageTextTask(Task):
    modality = "image-text"

    def __init__(self, cfg: ExperimentConfig, device: torch.device, work: Optional[Path] = None,
                 echo: Callable[[str], None] = lambda s: None) -> None:
        super().__init__(cfg, device, work, echo)
        self.method_name, self.method_params = resolve_method(cfg)
        cls, self.params = METHODS.params(self.method_name, self.method_params, "method.params")
        self.own_tokenizer = getattr(cls, "own_tokenizer", False)
        self.pretrained: Optional[Method] = None
        if self.own_tokenizer:  # a pretrained CLIP: image size and mean/std follow the model
            self.pretrained = self.fresh_method()
            self.params = self.pretrained.params
            pre, a = self.pretrained.preprocessing, cfg.augment
            a.out_size, a.mean, a.std = pre["size"], tuple(pre["mean"]), tuple(pre["std"])
        self.channels_last = cfg.train.use_channels_last(device, cfg.model.width)  # = min_conv_channels of the tower
        self.tokenizer: CaptionTokenizer | None = None
        self.info: dict[str, Any] = {}
        self.eval_sets: dict[str, EvalSet] = {}
        self.attack_set: Optional[str] = None
        self.caption_test: Optional[CaptionDataset] = None  # the caption test split when the attack set replaced it
        self.set_metrics: dict[str, dict[str, Any]] = {}

    # -- data -------------------------------------------------------------------------------------------------
    def load(self) -> CaptionSplits:
        cfg = self.cfg
        size = cfg.data.image_size or cfg.augment.out_size
        if cfg.data.captions.stream:  # the one choice of reader (the methods' ``streams`` checked in load_streamed)
            splits, n_caps = self.load_streamed(size), "streamed"
        else:
            splits = load_caption_splits(cfg.data.name, cfg.data.path, cfg.data.captions, size, cfg.seed)
            splits.train = subset_train(limit_pairs(splits.train, cfg.data.train_limit), cfg.data.train_per_class,
                                        cfg.data.train_subset, cfg.data.subset_seed)
            n_caps = sum(len(c) for c in splits.train.captions)
        splits.test = limit_pairs(splits.test, cfg.data.test_limit)
        self.echo(f"data: {cfg.data.name} ({len(splits.train)} train pairs / {n_caps} captions, {len(splits.test)} test pairs)")
        skipped = splits.source.get("skipped") or {}
        if any(skipped.values()):
            self.echo(f"warning: skipped bad rows {skipped} (data.captions.on_error=skip)")
        if cfg.eval.sets:
            self.eval_sets, self.attack_set = load_eval_sets(cfg.eval.sets, cfg.eval.attack_set, size, cfg.seed)
            for k, es in self.eval_sets.items():
                self.echo(f"eval set {k}: {len(es.data)} images ({'labelled' if es.labelled else 'unlabelled'}"
                          f"{', captions' if es.captions else ''})")
            if self.attack_set is not None:  # zero-shot and the attacks on the labelled set; retrieval stays
                self.caption_test = splits.test
                splits = CaptionSplits(splits.train, self.eval_sets[self.attack_set].data,
                                       {**splits.source, "attack_set": self.attack_set})
        return splits

    def load_streamed(self, size: int) -> CaptionSplits:
        """Train shards streamed (:mod:`clpoison.data.shards.shard_stream`), the test shards held in memory."""
        cfg, c = self.cfg, self.cfg.data.captions
        if cfg.data.name != "captions-tar":
            raise ConfigError(f"data.captions.stream=true streams tar shards; set data.name=captions-tar (not {cfg.data.name})")
        if not cfg.data.path or not c.test_path:
            raise ConfigError("data.captions.stream=true needs data.path (the train shards) and data.captions.test_path "
                              "(held-out shards, loaded into memory for evaluation)")
        for kind, reg, name in (("defense", DEFENSES, cfg.defense.name), ("attack", ATTACKS, cfg.attack.name)):
            if not reg.get(name).streams:  # the methods that run on streamed shards say so (``streams``)
                ok = [n for n in reg.names() if n != "none" and reg.get(n).streams]
                extra = " (they write their poisons as extra shards)" if kind == "attack" else ""
                raise ConfigError(f"{kind} '{name}' works on data held in memory; with data.captions.stream=true use "
                                  f"{', '.join(ok)}{extra} or none (or data.captions.stream=false)")
        train = StreamingCaptionSet(cfg.data.path, size, c.on_error, "train")
        test, skipped = read_caption_shards(c.test_path, c.on_error, size, "test")
        return CaptionSplits(train, limit_pairs(test, cfg.data.test_limit),
                             {"name": cfg.data.name, "path": str(cfg.data.path), "test_path": c.test_path, "streamed": True,
                              "train_shards": len(train.shards), "skipped": {"train": {}, "test": skipped}})

    # -- model ------------------------------------------------------------------------------------------------
    def make_tokenizer(self, train_set: CaptionDataset) -> CaptionTokenizer:
        p = self.params
        saved = None if self.work is None else self.work / TOKENIZER_NAME
        if p.tokenizer:
            tok, how = CaptionTokenizer.from_file(p.tokenizer), f"loaded from {p.tokenizer}"
        elif saved is not None and saved.exists():
            tok, how = CaptionTokenizer.from_file(saved), "reloaded from the partial run"
        else:
            tok, how = CaptionTokenizer.train(flat_captions(train_set), p.vocab_size), f"trained on {len(train_set)} pairs"
        if saved is not None and is_main():  # several processes: rank 0 writes it, the others reload it
            tok.save(saved)
        self.info["tokenizer"] = {"vocab_size": tok.vocab_size, "source": how, "context_length": p.context_length}
        self.echo(f"tokenizer: BPE, {tok.vocab_size} tokens, {how}")
        return tok

    def fresh_method(self, tokenizer: Optional[CaptionTokenizer] = None) -> Method:
        """A new method of this run (a pretrained CLIP: freshly read; the one read by the task is handed out once)."""
        if self.pretrained is not None:
            method, self.pretrained = self.pretrained, None
            return method
        c = self.cfg
        return build_method(self.method_name, self.method_params, {"arch": c.model.arch, "width": c.model.width,
                                                                   "stem_stride": c.model.stem_stride},
                            **({} if self.own_tokenizer else {"tokenizer": tokenizer}))

    def build_method(self, train_set: CaptionDataset):
        self.tokenizer = None if self.own_tokenizer else self.make_tokenizer(train_set)
        method = self.fresh_method(self.tokenizer)
        self.tokenizer = method.tokenizer
        return method

    def method_from_checkpoint(self, ckpt: Mapping[str, Any], what: str = "checkpoint") -> Method:
        """The trained CLIP of a checkpoint, with its tokenizer (the evaluation uses the evaluated method's). A
        pretrained CLIP (``model.init`` / ``pretrained-clip``) is read from its path, then given the checkpoint's weights (none
        in the checkpoint-like dict of a bare pretrained model)."""
        if self.own_tokenizer:
            method = self.fresh_method()
            if ckpt.get("model") is not None:
                try:
                    method.load_state_dict(ckpt["model"])
                except RuntimeError as e:
                    raise ConfigError(f"{what}: the weights do not fit the pretrained CLIP '{self.params.path}' "
                                      f"({str(e).splitlines()[0][:160]})") from None
            method = method.to(self.device)
        else:
            method = super().method_from_checkpoint(ckpt, what)
        return method

    def batches(self, method: Any, train_set: CaptionDataset, defense: Any) -> Any:
        cfg = self.cfg
        if defense.view_sampler(cfg.augment) is not None:
            raise ConfigError(f"defense '{cfg.defense.name}' replaces the image-SSL view sampler, which CLIP does not use")
        a, c = cfg.augment, cfg.data.captions
        augment = CaptionImageAugment(a.out_size, c.augment, c.translate_px, a.crop_scale, a.crop_ratio, a.flip_p, a.mean, a.std)
        batches, info = clip_batches(train_set, self.tokenizer, self.params.context_length,
                                     local_batch_size(cfg.train.batch_size), self.device, cfg.seed, augment,
                                     self.channels_last, rank(), world_size(), c.workers, c.shuffle_buffer)
        self.info.update(info)
        if info.get("truncated_train_captions"):
            self.echo(f"note: {info['truncated_train_captions']} training captions truncated to "
                      f"{self.params.context_length} tokens")
        return batches

    # -- evaluation -------------------------------------------------------------------------------------------
    def zeroshot(self, method: Any, class_names: list[str]) -> ZeroShotClassifier:
        return ZeroShotClassifier(
            method.model, method.tokenizer, class_names, self.cfg.eval.zeroshot_templates or CIFAR_TEMPLATES,
            transform=self.transform(), device=self.device, batch_size=self.cfg.eval.batch_size,
            context_length=self.params.context_length, channels_last=self.channels_last,
        )

    def random_init_metrics(self, method: Any, splits: CaptionSplits) -> dict[str, float]:
        """The untrained model's zero-shot, retrieval and linear probe (the controls), on the test split and on
        every evaluation set (``eval_sets[KEY]["*_random_init"]``)."""
        if self.own_tokenizer:  # a pretrained CLIP has no untrained state of its own
            self.skip("zeroshot_top1_random_init", "the run starts from a pretrained CLIP (model.init); evaluate the "
                      "bare model (`clpoison evaluate MODEL`) for its metrics before fine-tuning")
            return {}
        m = self.clean_metrics(method, splits, probe=self.cfg.eval.linear, quiet=True)
        for k, es in self.eval_sets.items():
            r = self.set_eval(method, es, quiet=True)
            self.set_metrics.setdefault(k, {}).update({f"{n}_random_init": v for n, v in r.items()})
        out = {f"{k}_random_init": v for k, v in m.items() if k == "zeroshot_top1" or k.startswith("recall_at_")
               or k == "linear_top1"}
        if "zeroshot_top1_random_init" in out:
            self.echo(f"random-init zero-shot top-1: {out['zeroshot_top1_random_init']:.4f}")
        return out

    def clean_metrics(self, method: Any, splits: CaptionSplits, probe: bool = True, quiet: bool = False,
                      extras: Optional[dict] = None) -> dict[str, Any]:
        """Zero-shot on the (labelled) test split, retrieval on the caption test split, kNN + linear probe when
        both splits are labelled."""
        cfg = self.cfg
        metrics: dict[str, Any] = {}
        extras = {} if extras is None else extras
        test = splits.test
        zs = None
        if splits.class_names:
            zs = self.zeroshot(method, splits.class_names)
            extras.update(zeroshot=zs, text_features=zs.text_features)
        if zs is not None and labelled(test):
            metrics["zeroshot_top1"] = zs.top1(test.images, test.labels)
        elif not quiet:
            self.skip("zeroshot_top1", "the test split has no labels / class names; name a labelled set in eval.sets "
                      "(e.g. {cifar10: {data: cifar10-subset}}) or set data.captions.label_column")
        # retrieval on the caption test pairs (every caption of every test image)
        captions = self.caption_test if self.caption_test is not None else test
        metrics.update(self.retrieval(method, captions))
        # the foundation's kNN + linear probe on image-tower features (needs labels on both splits)
        if labelled(splits.train) and labelled(test):
            img_splits = ImageSplits(
                ImageDataset(splits.train.images, splits.train.labels, splits.class_names, "train", splits.train.sizes),
                ImageDataset(test.images, test.labels, splits.class_names, "test", test.sizes),
            )
            m, e = evaluate_encoder(method.encoder, img_splits, self.transform(), self.device, cfg.eval, linear=probe)
            metrics.update(m)
            extras.update({k: v for k, v in e.items() if k != "transform"})
        elif not quiet:
            self.skip("linear_top1", "the training captions have no labels" + (
                "; the probes are measured on the labelled image sets of eval_sets" if self.eval_sets else
                "; name a labelled image set in eval.sets to measure them"))
        return metrics

    def retrieval(self, method: Any, ds: CaptionDataset) -> dict[str, float]:
        img = self.zeroshot_free(method).embed(ds.images)
        texts = flat_captions(ds)
        owner = torch.repeat_interleave(torch.arange(len(ds)), torch.tensor([len(c) for c in ds.captions]))
        txt = encode_texts(method.model, method.tokenizer, texts, self.params.context_length, device=self.device)
        return retrieval_recall(img, txt, owner, self.cfg.eval.retrieval_ks)

    def set_eval(self, method: Any, es: EvalSet, quiet: bool = False) -> dict[str, Any]:
        """One evaluation set: zero-shot (labelled), retrieval (real captions), kNN + linear probe (image source)."""
        m: dict[str, Any] = {}
        d = es.data
        if es.labelled:
            m["zeroshot_top1"] = self.zeroshot(method, d.class_names).top1(d.images, d.labels)
        elif not quiet:
            self.skip(f"{es.key}.zeroshot_top1", "the set has no labels (give a caption CSV a label_column)")
        if es.captions:
            m.update(self.retrieval(method, d))
        if es.probe_train is not None and es.labelled:
            img = ImageSplits(es.probe_train, ImageDataset(d.images, d.labels, d.class_names, "test", d.sizes))
            m.update(evaluate_encoder(method.encoder, img, self.transform(), self.device, self.cfg.eval)[0])
        return m

    def evaluate(self, method: Any, splits: CaptionSplits) -> tuple[dict[str, Any], dict[str, Any]]:
        cfg = self.cfg
        extras: dict[str, Any] = {"tokenizer": method.tokenizer, "model": method.model, "transform": self.transform(),
                                  "templates": list(cfg.eval.zeroshot_templates or CIFAR_TEMPLATES)}
        metrics = self.clean_metrics(method, splits, extras=extras)
        for k, es in self.eval_sets.items():
            self.set_metrics.setdefault(k, {}).update(self.set_eval(method, es))
        return metrics, extras

    def attack_metrics(self, attack_name: str, metrics: dict[str, Any]) -> None:
        """File the attack's metrics under the attack set's key; say which attack metrics could not be measured."""
        if attack_name == "none":
            return
        if self.attack_set is not None:
            self.set_metrics.setdefault(self.attack_set, {}).update(
                {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        wanted = {"carlini-backdoor": "asr", "carlini-targeted": "targeted_success_rate"}.get(attack_name)
        if wanted and wanted not in metrics:
            self.skip(wanted, "no labelled test split with the target class; name a labelled set in eval.sets")

    def extra_results(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.set_metrics:
            out["eval_sets"] = self.set_metrics
        if self.attack_set is not None:
            out["attack_set"] = self.attack_set
        out["skipped"] = dict(self.skipped)
        return out

    def zeroshot_free(self, method: Any) -> ZeroShotClassifier:
        """An image embedder for data without class names (no text features)."""
        return ZeroShotClassifier(None, None, (), transform=self.transform(), device=self.device,
                                  batch_size=self.cfg.eval.batch_size, channels_last=self.channels_last, embed_model=method.model)

    def context(self, method: Any, splits: Any, poisoned: Any, extras: dict) -> EvalContext:
        """The attack-evaluation contract: ``classify`` = zero-shot predictions, ``embed`` = CLIP image embeddings."""
        zs = extras.get("zeroshot")
        embedder = zs or self.zeroshot_free(method)

        def classify(images: torch.Tensor) -> torch.Tensor:
            if zs is None:
                raise ConfigError("this caption dataset has no class names, so there is no zero-shot classifier")
            return zs.predict(images)

        return attack_context(encoder=method.encoder, splits=splits, poisoned=poisoned, settings=self.cfg.eval,
                              device=self.device, classify=classify, embed=embedder.embed, extras=extras)

    def data_info(self, train_set: CaptionDataset, splits: CaptionSplits) -> dict[str, Any]:
        return {"train_pairs": len(train_set), "train_captions": sum(len(c) for c in train_set.captions),
                "test_pairs": len(splits.test), "classes": splits.class_names, "source": splits.source, **self.info}

    def throughput(self, n_samples: int, seconds: float) -> dict[str, float]:
        return {"pretrain_pairs_per_s": n_samples / max(seconds, 1e-9)}
