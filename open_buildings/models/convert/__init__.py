"""Readers of the official checkpoint layouts (SigLIP/PaliGemma, OWL-ViT, V-MoE)."""
