/*
 * Used by scripts/pi-cost. Preloaded into the aarch64 program that
 * qemu-user runs (LD_PRELOAD), it makes getauxval() report the CPU
 * features of a Raspberry Pi 4's Cortex-A72 (BCM2711), whose /proc/cpuinfo
 * lists "fp asimd evtstrm crc32 cpuid": no ARMv8 cryptography extensions
 * (AES, PMULL, SHA1, SHA2). qemu's cortex-a72 model has them, and the
 * crates that pick a code path at run time (ring; aes, polyval and sha2
 * through cpufeatures) ask getauxval, so without this the count would be
 * that of a Pi 5, not of the Pi 4 the fleet mostly runs.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/auxv.h>

#define PI4_HWCAP ((1UL << 0) | (1UL << 1) | (1UL << 2) | (1UL << 7) | (1UL << 11))

unsigned long getauxval(unsigned long type)
{
    static unsigned long (*real)(unsigned long);
    if (!real)
        real = (unsigned long (*)(unsigned long))dlsym(RTLD_NEXT, "getauxval");
    unsigned long value = real(type);
    if (type == AT_HWCAP)
        return value & PI4_HWCAP;
    if (type == AT_HWCAP2)
        return 0;
    return value;
}
