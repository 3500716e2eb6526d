"""Tests of corral._disk: archives, trees and file primitives."""
