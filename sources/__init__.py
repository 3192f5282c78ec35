"""Where the raw images come from (the Hugging Face DFF zips, a local folder, the synthetic set),
the raw manifest, and the group-aware train/val/test split.
"""
