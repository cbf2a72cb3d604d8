"""el-demo: translation (LS-CE vs EL) on the generated toy corpus and vision (CE vs EL) on the digits image folder
(no network needed); __main__ runs both and prints one table. The demo's data is generated here: toy_corpus (a
deterministic parallel corpus, an invented language and its English) and digits (scikit-learn's bundled 8x8 digits,
upscaled, as an image folder timm's and torchvision's readers take); the tests use them too.

The demo ships with the package, not with the repository's evidence: it shows a user, on their machine, both
integrations training with EL through the product's own commands, and the README's first command runs it."""
