"""The studies behind docs/results.md: each returns a markdown section (`sqref study NAME`).

One module per study (clipping, paper, finetune: the fine-tuned results and
the three choices made before them, replicate, tradeoff, structural); what
they share is in common, and the page they fill (markers, header, update)
in results. Every choice (rank, bits, method) is made on the VALIDATION
split; the test split only reports. Every study but structural runs its
cells through common.run_cells, in this process or on a Dask cluster, with
an optional cache (docs/scale.md); structural measures time and memory, so
it runs in this process only.
"""
# BITS_CANDIDATES and FINETUNE_CANDIDATES are cited as sqref.studies.* in the tables of docs/results.md
from sqref.studies.clipping import clipping_study
from sqref.studies.finetune import (BITS_CANDIDATES, FINETUNE_CANDIDATES, finetune_bits_study, finetune_keep_study,
                                    finetune_select_study, finetune_study)
from sqref.studies.paper import paper_study
from sqref.studies.replicate import replicate_study
from sqref.studies.structural import structural_study
from sqref.studies.tradeoff import tradeoff_study

# `sqref study NAME` and `sqref study all` (in this order, the order of docs/results.md)
STUDIES = {"clipping": clipping_study, "paper": paper_study, "finetune-select": finetune_select_study,
           "finetune-bits": finetune_bits_study, "finetune-keep": finetune_keep_study,
           "finetune": finetune_study, "replicate": replicate_study, "tradeoff": tradeoff_study,
           "structural": structural_study}

__all__ = ["STUDIES", "BITS_CANDIDATES", "FINETUNE_CANDIDATES"]
