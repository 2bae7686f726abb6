"""ViTP pretraining: the recipe dataset, the Lightning module, metrics and the run (see ``run``)."""
