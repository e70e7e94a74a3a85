"""The QLoRA paper's published numbers (arXiv:2305.14314), the only values typed into the tables."""

# Table 2: mean Pile Common Crawl perplexity over OPT, BLOOM, LLaMA, Pythia 125M-13B.
TABLE2_PERPLEXITY = {"int4": 34.34, "fp4": 31.07, "fp4_e3m0": 29.48, "nf4_dq": 27.41}

# Table 3: GLUE accuracy (RoBERTa-large) and Super-NaturalInstructions RougeL (T5 80M..11B).
TABLE3_COLUMNS = ("GLUE RoBERTa-large", "S-NI T5-80M", "S-NI T5-250M", "S-NI T5-780M", "S-NI T5-3B", "S-NI T5-11B")
TABLE3 = {
    ("full", "bf16"): (88.6, 40.1, 42.1, 48.0, 54.3, 62.0),
    ("lora", "bf16"): (88.8, 40.5, 42.6, 47.1, 55.4, 60.7),
    ("qlora", "int8"): (88.8, 40.4, 42.9, 45.4, 56.5, 60.7),
    ("qlora", "fp4"): (88.6, 40.3, 42.4, 47.5, 55.6, 60.9),
    ("qlora", "nf4_dq"): (None, 40.4, 42.7, 47.7, 55.3, 60.9),
}

# Table 4: mean 5-shot MMLU after instruction tuning (LLaMA 7-65B on Alpaca and FLAN v2).
TABLE4_MEAN = {"bf16": 53.0, "fp4": 52.2, "nf4_dq": 53.1}

# Memory (paper §4 / Figure 6): LLaMA-7B.
MEMORY_7B_BASE_4BIT_MB = 5048
MEMORY_7B_LORA_PARAMS_MB = 26
