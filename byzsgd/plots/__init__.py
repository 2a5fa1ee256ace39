"""``byzsgd plot``: runs.py reads run folders and computes what the figures show (statistics over
seeds, the CSV next to each figure); figures.py draws them (matplotlib, Agg backend)."""
