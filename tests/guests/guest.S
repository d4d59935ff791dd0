/*
 * husk test guest: a freestanding kernel image used as a fixture for
 * husk-vmm. It boots either through the PVH entry (32-bit, paging off,
 * %ebx = hvm_start_info) or through the Linux 64-bit boot protocol
 * (%rsi = boot_params, long mode set up by the VMM), prints what the VMM
 * handed it to COM1 and then performs the action named on its command line
 * (`action=reset|halt|ticks|triple|emulfail|kbd`, default reset). With
 * `quiet` on the command line it prints only the marker line and resets.
 *
 * Only plain integer instructions are used: on a PVM host every instruction
 * of a non-enlightened guest goes through KVM's instruction emulator.
 *
 * Output (one item per line, parsed by the integration tests):
 *   HUSK-TEST-GUEST boot=<pvh|linux>
 *   cmdline=<command line>
 *   e820 <addr> <size> <type>
 *   initrd <addr> <size> fnv=<fnv1a-32 of the initrd bytes>
 *   cpus=<processor entries in the MP table>
 *   cpuid <leaf 1 ECX> <leaf 1 EBX>
 *   HUSK-TEST-GUEST-OK
 */
        .intel_syntax noprefix

        .set COM1, 0x3f8
        .set PVH_MAGIC, 0x336ec578

/* ---------------------------------------------------------------------- */
        .section .text.head, "ax"
        .code64
        .globl _start
_start:                         /* bzImage protected-mode start: unused */
        hlt
        jmp     _start

        .org    0x200
bz_entry64:                     /* Linux 64-bit boot protocol entry */
        cli
        lea     rsp, [rip + stack_top]
        mov     rdi, rsi
        xor     esi, esi        /* mode 0: boot_params */
        jmp     main64

/* ---------------------------------------------------------------------- */
        .text
        .code32
        .globl pvh_start32
pvh_start32:
        cli
        mov     esp, offset stack_top
        mov     ebp, ebx                /* hvm_start_info */

        /*
         * `quiet`: print the marker and reset straight from 32-bit mode, as
         * the minimal guests of the reference boot figures do (switching to
         * long mode is costly where the guest runs in an emulator).
         */
        cmp     dword ptr [ebp], PVH_MAGIC
        jne     9f
        mov     esi, dword ptr [ebp + 24]       /* cmdline_paddr (low) */
        test    esi, esi
        jz      9f
6:      cmp     byte ptr [esi], 0
        je      9f
        cmp     dword ptr [esi], 0x65697571     /* "quie" */
        jne     7f
        cmp     byte ptr [esi + 4], 't'
        je      8f
7:      inc     esi
        jmp     6b
8:      mov     esi, offset s_ok
        mov     dx, COM1
1:      mov     al, byte ptr [esi]
        test    al, al
        jz      2f
        out     dx, al
        inc     esi
        jmp     1b
2:      mov     al, 0xfe
        out     0x64, al
        xor     eax, eax
        out     0xf4, al
3:      hlt
        jmp     3b
9:

        /*
         * Identity-map the first 4 GiB. The VMM hands over zeroed memory, so
         * only the entries used are written. With 1 GiB pages (CPUID
         * 0x80000001 EDX bit 26) that is four PDPT entries; without, four
         * page directories of 2 MiB pages. Every instruction here may be
         * emulated, so the short path matters for boot time.
         */
        mov     dword ptr [pml4], offset pdpt + 3
        mov     eax, 0x80000001
        cpuid
        test    edx, 1 << 26
        jz      4f
        mov     edi, offset pdpt
        mov     eax, 0x83
        xor     edx, edx
        mov     ecx, 4
1:      mov     [edi], eax
        mov     [edi + 4], edx
        add     eax, 0x40000000
        adc     edx, 0
        add     edi, 8
        dec     ecx
        jnz     1b
        jmp     5f
4:      mov     edi, offset pdpt
        mov     eax, offset pd + 3
        mov     ecx, 4
2:      mov     [edi], eax
        add     eax, 0x1000
        add     edi, 8
        dec     ecx
        jnz     2b
        mov     edi, offset pd
        mov     eax, 0x83
        xor     edx, edx
        mov     ecx, 2048
3:      mov     [edi], eax
        mov     [edi + 4], edx
        add     eax, 0x200000
        adc     edx, 0
        add     edi, 8
        dec     ecx
        jnz     3b
5:
        mov     eax, cr4
        or      eax, 0x20               /* PAE */
        mov     cr4, eax
        mov     eax, offset pml4
        mov     cr3, eax
        mov     ecx, 0xc0000080         /* EFER */
        rdmsr
        or      eax, 0x100              /* LME */
        wrmsr
        mov     eax, cr0
        or      eax, 0x80000001         /* PG | PE */
        mov     cr0, eax
        lgdt    [gdt_desc]
        .att_syntax
        ljmp    $0x08, $pvh_long
        .intel_syntax noprefix

        .code64
pvh_long:
        mov     ax, 0x10
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        lea     rsp, [rip + stack_top]
        mov     edi, ebp
        mov     esi, 1                  /* mode 1: hvm_start_info */
        jmp     main64

/* ---------------------------------------------------------------------- */
/* main64(rdi = boot info, esi = mode) */
main64:
        mov     r12, rdi
        mov     r13d, esi

        /* `quiet` on the command line: print only the marker (benchmarks). */
        test    r13d, r13d
        jnz     1f
        mov     r14d, dword ptr [r12 + 0x228]
        jmp     2f
1:      mov     r14, [r12 + 24]
2:      test    r14, r14
        jz      3f
        mov     rdi, r14
        lea     rsi, [rip + s_quiet]
        call    strstr
        test    rax, rax
        jz      3f
        lea     rdi, [rip + s_ok]
        call    puts
        jmp     do_reset
3:

        lea     rdi, [rip + s_banner]
        call    puts
        lea     rdi, [rip + s_linux]
        test    r13d, r13d
        jz      1f
        lea     rdi, [rip + s_pvh]
1:      call    puts

        /* ---- command line -> r14 */
        test    r13d, r13d
        jnz     2f
        mov     r14d, dword ptr [r12 + 0x228]
        jmp     3f
2:      cmp     dword ptr [r12], PVH_MAGIC
        je      4f
        lea     rdi, [rip + s_badmagic]
        call    puts
        jmp     do_reset
4:      mov     r14, [r12 + 24]
3:      lea     rdi, [rip + s_cmdline]
        call    puts
        xor     eax, eax
        test    r14, r14
        jz      5f
        mov     rdi, r14
        call    puts
5:      call    newline

        /* ---- memory map: r15 = table, ebx = count, ebp = stride */
        test    r13d, r13d
        jnz     6f
        movzx   ebx, byte ptr [r12 + 0x1e8]
        lea     r15, [r12 + 0x2d0]
        mov     ebp, 20
        jmp     7f
6:      xor     ebx, ebx
        cmp     dword ptr [r12 + 4], 1  /* memmap needs version >= 1 */
        jb      7f
        mov     ebx, dword ptr [r12 + 48]
        mov     r15, [r12 + 40]
        mov     ebp, 24
7:      test    ebx, ebx
        jz      8f
        lea     rdi, [rip + s_e820]
        call    puts
        mov     rdi, [r15]
        call    put_hex
        call    space
        mov     rdi, [r15 + 8]
        call    put_hex
        call    space
        mov     edi, dword ptr [r15 + 16]
        call    put_dec
        call    newline
        add     r15, rbp
        dec     ebx
        jmp     7b
8:
        /* ---- initrd: rbx = addr, r15 = size */
        xor     ebx, ebx
        xor     r15d, r15d
        test    r13d, r13d
        jnz     9f
        mov     ebx, dword ptr [r12 + 0x218]
        mov     r15d, dword ptr [r12 + 0x21c]
        jmp     10f
9:      cmp     dword ptr [r12 + 12], 0
        je      10f
        mov     rax, [r12 + 16]
        mov     rbx, [rax]
        mov     r15, [rax + 8]
10:     lea     rdi, [rip + s_initrd]
        call    puts
        mov     rdi, rbx
        call    put_hex
        call    space
        mov     rdi, r15
        call    put_hex
        lea     rdi, [rip + s_fnv]
        call    puts
        mov     eax, 0x811c9dc5
        mov     rsi, rbx
        mov     rcx, r15
11:     test    rcx, rcx
        jz      12f
        movzx   edx, byte ptr [rsi]
        xor     eax, edx
        imul    eax, eax, 0x01000193
        inc     rsi
        dec     rcx
        jmp     11b
12:     mov     edi, eax
        call    put_hex
        call    newline

        /* ---- processors in the MP table */
        mov     rdi, 0x9fc00
        mov     rsi, 0xa0000
        call    mp_scan
        test    rax, rax
        jnz     13f
        mov     rdi, 0xe0000
        mov     rsi, 0x100000
        call    mp_scan
13:     xor     ebx, ebx
        test    rax, rax
        jz      16f
        mov     eax, dword ptr [rax + 4]        /* MP config table */
        cmp     dword ptr [rax], 0x504d4350     /* "PCMP" */
        jne     16f
        movzx   ecx, word ptr [rax + 34]        /* entry count */
        lea     rsi, [rax + 44]
14:     test    ecx, ecx
        jz      16f
        mov     dl, byte ptr [rsi]
        test    dl, dl
        jnz     15f
        test    byte ptr [rsi + 3], 1           /* enabled */
        jz      17f
        inc     ebx
17:     add     rsi, 20
        dec     ecx
        jmp     14b
15:     add     rsi, 8
        dec     ecx
        jmp     14b
16:     lea     rdi, [rip + s_cpus]
        call    puts
        mov     edi, ebx
        call    put_dec
        call    newline

        /* ---- CPUID leaf 1 ECX and EBX (APIC ID, logical count) as the BSP sees them */
        lea     rdi, [rip + s_cpuid]
        call    puts
        mov     eax, 1
        xor     ecx, ecx
        cpuid
        mov     edi, ecx
        call    put_hex
        call    space
        mov     eax, 1
        xor     ecx, ecx
        cpuid
        mov     edi, ebx
        call    put_hex
        call    newline

        lea     rdi, [rip + s_ok]
        call    puts

        /* ---- action */
        test    r14, r14
        jz      do_reset
        mov     rdi, r14
        lea     rsi, [rip + s_act_halt]
        call    strstr
        test    rax, rax
        jnz     do_halt
        mov     rdi, r14
        lea     rsi, [rip + s_act_ticks]
        call    strstr
        test    rax, rax
        jnz     do_ticks
        mov     rdi, r14
        lea     rsi, [rip + s_act_triple]
        call    strstr
        test    rax, rax
        jnz     do_triple
        mov     rdi, r14
        lea     rsi, [rip + s_act_emulfail]
        call    strstr
        test    rax, rax
        jnz     do_emulfail
        mov     rdi, r14
        lea     rsi, [rip + s_act_kbd]
        call    strstr
        test    rax, rax
        jnz     do_kbd

do_reset:
        mov     al, 0xfe
        out     0x64, al                /* i8042 CPU reset */
        xor     eax, eax
        out     0xf4, al                /* QEMU isa-debug-exit, for peers */
1:      hlt
        jmp     1b

do_halt:
        cli
1:      hlt
        jmp     1b

do_ticks:
        xor     ebx, ebx
1:      lea     rdi, [rip + s_tick]
        call    puts
        mov     edi, ebx
        call    put_dec
        call    newline
        inc     ebx
        mov     ecx, 20000
2:      dec     ecx
        jnz     2b
        jmp     1b

do_triple:
        lidt    [rip + null_idt]
        mov     rax, 0x8000000000000000         /* non-canonical: #GP */
        mov     rax, [rax]
        ud2
        jmp     do_triple

do_emulfail:
        lea     rsi, [rip + scratch16]
        xor     eax, eax
        xor     edx, edx
        xor     ebx, ebx
        xor     ecx, ecx
        lock cmpxchg16b [rsi]
        lea     rdi, [rip + s_emul_ran]
        call    puts
        jmp     do_triple

do_kbd:                         /* wait for a scancode, then reset */
1:      in      al, 0x64
        test    al, 1
        jz      1b
        in      al, 0x60
        movzx   edi, al
        lea     rdi, [rip + s_key]
        push    rax
        call    puts
        pop     rax
        movzx   edi, al
        call    put_hex
        call    newline
        jmp     do_reset

/* mp_scan(rdi = start, rsi = end) -> rax = floating pointer or 0 */
mp_scan:
1:      cmp     rdi, rsi
        jae     2f
        cmp     dword ptr [rdi], 0x5f504d5f     /* "_MP_" */
        je      3f
        add     rdi, 16
        jmp     1b
2:      xor     eax, eax
        ret
3:      mov     rax, rdi
        ret

/* strstr(rdi = haystack, rsi = needle) -> rax = match or 0 */
strstr:
1:      xor     ecx, ecx
2:      mov     dl, byte ptr [rsi + rcx]
        test    dl, dl
        jz      4f
        cmp     dl, byte ptr [rdi + rcx]
        jne     3f
        inc     rcx
        jmp     2b
3:      cmp     byte ptr [rdi], 0
        je      5f
        inc     rdi
        jmp     1b
4:      mov     rax, rdi
        ret
5:      xor     eax, eax
        ret

/* putc(dil) */
putc:
        mov     eax, edi
        mov     dx, COM1
        out     dx, al
        ret

/* puts(rdi = NUL-terminated string) */
puts:
        push    rbx
        mov     rbx, rdi
1:      movzx   edi, byte ptr [rbx]
        test    edi, edi
        jz      2f
        call    putc
        inc     rbx
        jmp     1b
2:      pop     rbx
        ret

newline:
        mov     edi, 10
        jmp     putc

space:
        mov     edi, 32
        jmp     putc

/* put_hex(rdi): 0x followed by the minimal number of hex digits */
put_hex:
        push    rbx
        push    r12
        mov     rbx, rdi
        mov     edi, '0'
        call    putc
        mov     edi, 'x'
        call    putc
        mov     ecx, 60
        xor     r12d, r12d              /* seen a non-zero digit */
1:      mov     rax, rbx
        shr     rax, cl
        and     eax, 15
        test    ecx, ecx
        jz      2f
        test    eax, eax
        jnz     2f
        test    r12d, r12d
        jz      3f
2:      mov     r12d, 1
        lea     rdx, [rip + hexdigits]
        movzx   edi, byte ptr [rdx + rax]
        push    rcx
        call    putc
        pop     rcx
3:      sub     ecx, 4
        jns     1b
        pop     r12
        pop     rbx
        ret

/* put_dec(edi) */
put_dec:
        push    rbx
        mov     eax, edi
        lea     rbx, [rip + decbuf_end]
        mov     byte ptr [rbx], 0
1:      xor     edx, edx
        mov     ecx, 10
        div     ecx
        add     dl, '0'
        dec     rbx
        mov     byte ptr [rbx], dl
        test    eax, eax
        jnz     1b
        mov     rdi, rbx
        call    puts
        pop     rbx
        ret

/* ---------------------------------------------------------------------- */
        .section .rodata
hexdigits:      .ascii "0123456789abcdef"
s_banner:       .asciz "HUSK-TEST-GUEST boot="
s_linux:        .asciz "linux\n"
s_pvh:          .asciz "pvh\n"
s_badmagic:     .asciz "error=bad-pvh-magic\n"
s_cmdline:      .asciz "cmdline="
s_e820:         .asciz "e820 "
s_initrd:       .asciz "initrd "
s_fnv:          .asciz " fnv="
s_cpus:         .asciz "cpus="
s_cpuid:        .asciz "cpuid "
s_ok:           .asciz "HUSK-TEST-GUEST-OK\n"
s_tick:         .asciz "tick "
s_key:          .asciz "key "
s_emul_ran:     .asciz "emulfail-instruction-ran\n"
s_quiet:        .asciz "quiet"
s_act_halt:     .asciz "action=halt"
s_act_ticks:    .asciz "action=ticks"
s_act_triple:   .asciz "action=triple"
s_act_emulfail: .asciz "action=emulfail"
s_act_kbd:      .asciz "action=kbd"

        .p2align 4
gdt:    .quad 0
        .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
        .quad 0x00cf92000000ffff        /* 0x10: data */
gdt_desc:
        .word gdt_desc - gdt - 1
        .long gdt
null_idt:
        .word 0
        .quad 0

/* ---------------------------------------------------------------------- */
        .section .note.Xen, "a"
        .p2align 2
        .long 4                         /* namesz */
        .long 4                         /* descsz */
        .long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz "Xen"
        .long pvh_start32

/* ---------------------------------------------------------------------- */
        .section .bss
        .p2align 12
pml4:   .skip 4096
pdpt:   .skip 4096
pd:     .skip 4 * 4096
        .p2align 4
scratch16:      .skip 16
decbuf:         .skip 24
decbuf_end:     .skip 8
stack:  .skip 16384
stack_top:

        .section .note.GNU-stack, "", @progbits
