"""Models on this machine: what a model folder is (`folder`), what is installed (`inventory`),
downloads (`hub`), loading (`loading`), the catalog, per-model settings, and the model service
that owns loaded models for the process. Importing this package is cheap (no torch).
"""
