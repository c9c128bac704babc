"""Studies made of many runs that decide what to train next from what earlier runs measured (the
batch-size study tunes each batch's learning rate, then compares at the rates it found). Studies
that are a fixed list of runs (sweep, warm start, remedies) are config sections that train.py runs."""
