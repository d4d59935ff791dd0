/*
 * A tiny static /init for smoke-testing Linux guests: writes one line to its
 * console and restarts the machine. No libc, two system calls.
 */
        .intel_syntax noprefix
        .text
        .globl _start
_start:
        mov     eax, 1                  /* write(1, msg, len) */
        mov     edi, 1
        lea     rsi, [rip + msg]
        mov     edx, msg_end - msg
        syscall
        mov     eax, 169                /* reboot(MAGIC1, MAGIC2, RESTART) */
        mov     edi, 0xfee1dead
        mov     esi, 672274793
        mov     edx, 0x01234567
        syscall
1:      jmp     1b

        .section .rodata
msg:    .ascii "HUSK-INIT-RAN\n"
msg_end:

        .section .note.GNU-stack, "", @progbits
