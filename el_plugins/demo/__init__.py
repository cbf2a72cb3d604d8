"""el-demo: translation (LS-CE vs EL) on the generated toy corpus and vision (CE vs EL) on the digits
image folder, both from el_plugins.testing (no network needed); __main__ runs both and prints one table."""
