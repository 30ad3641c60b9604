"""Tiny models with local tokenizers, built from configs with a fixed seed, for tests and the demo.

Nothing here downloads anything: each builder writes a directory that loads through the same
`from_pretrained` code path as a hub id.
"""
