"""Privacy of synthetic tables beyond what the model learns: columns that identify rows or hold personal
data are never modelled but generated fresh at sampling time (same format, never a real value), so a
synthetic table cannot replay a real identifier, e-mail address or name however well the model fits."""
