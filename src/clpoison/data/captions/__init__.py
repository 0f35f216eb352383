"""Image–caption pairs (CLIP pretraining data) held in memory: the dataset record (``caption_dataset``:
:class:`CaptionDataset`, :class:`CaptionSplits`, re-exported here) and the pair-source protocol it shares with the
streamed split (``pair_source``); the readers of the ``data.name`` caption sources (``caption_readers``: CSV/TSV and
the registry; ``caption_shards``: webdataset tar shards read whole and written; ``caption_rows``: what they share;
``caption_source_info``: what ``clpoison datasets`` says of them) and the synthetic captions of a labelled image set
(``caption_generator``); class labels read from captions (``caption_labels``); the BPE tokenizer (``tokenizer``);
batches for CLIP pretraining (``caption_loader``) and EDA caption views (``eda``, ``synonyms``). The streamed split:
:mod:`clpoison.data.shards`."""

from .caption_dataset import CaptionDataset, CaptionSplits

__all__ = ["CaptionDataset", "CaptionSplits"]
