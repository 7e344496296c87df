"""Readers of official checkpoint layouts (SigLIP/PaliGemma, OWL-ViT, V-MoE) for the model families."""
