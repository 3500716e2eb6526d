"""Tests of corral._model: manifests, dependencies, lifecycle, schema."""
