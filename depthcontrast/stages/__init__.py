"""The stages behind the `depthcontrast` verbs that have no module of their own elsewhere in the package (download,
preprocess, pretrain's launch, inspect), and the settings files through which the workflow's rules give each
verb its part of the config (settings.py)."""
