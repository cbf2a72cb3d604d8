"""Translation tools: checkpoint averaging, BLEU, IWSLT data preparation."""
