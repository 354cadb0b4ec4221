"""Torch-only core of the Perfusion pack: gate math, concept file format, validation.

Nothing here imports ComfyUI, so it is tested everywhere (CI included).
"""
