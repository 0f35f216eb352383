"""The poisoned-dataset record, shared by attacks (which write it), defenses and audits (which score against it) and
the CLI: the manifest (``manifest``: what an attack did, fingerprints, the trigger), the export of a poisoned dataset
(``export``) in its file layouts (``export_formats``), and the check of an export (``verify``: ``SHA256SUMS``,
fingerprints)."""
