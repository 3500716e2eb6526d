"""Tests of corral._distribution: signing, trust, resolution, installs."""
