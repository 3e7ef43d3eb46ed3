# Used by scripts/pi-cost.
# Counts the guest instructions qemu-user executed, from its log with
# -d in_asm,exec,nochain: each translated block's size (in_asm), summed
# over every execution of a block (exec; nochain makes it log them all).
/^IN:/ { inblock = 1; pc = ""; n = 0; next }
inblock && /^0x[0-9a-f]+:/ {
    if (pc == "") { pc = substr($1, 3); sub(/:$/, "", pc); sub(/^0+/, "", pc) }
    n++
    next
}
inblock && /^$/ { if (pc != "") size[pc] = n; inblock = 0; next }
/^Trace / {
    split($0, f, "/"); p = f[2]; sub(/^0+/, "", p)
    if (p in size) total += size[p]; else unknown++
    blocks++
}
END { printf "%.0f %.0f %.0f\n", total, blocks, unknown }
