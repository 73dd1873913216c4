"""The modelling code an export writes beside a model that no transformers architecture computes: read
by `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`, it needs torch and transformers
alone (never gptdist)."""
