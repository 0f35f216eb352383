"""A CLIP training split streamed from webdataset tar shards (``data.captions.stream: true``), never held in memory:
the split (``shard_set``: shard list, counts from the tar headers, fingerprints — the streamed
:class:`~clpoison.data.captions.pair_source.PairSource`), its sample stream (``shard_stream``: shards split by process
and loader worker, a seeded shuffle buffer), its poisons and clean subsets as extra shards (``shard_edits``) and its
CLIP batches (``shard_batches``). The tar format itself (read whole, written) and the in-memory side:
:mod:`clpoison.data.captions`."""
