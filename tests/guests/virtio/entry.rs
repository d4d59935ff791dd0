//! PVH entry: 32-bit protected mode with paging off and `%ebx` pointing to
//! the start info. Identity-maps 4 GiB (1 GiB pages when the CPU has them),
//! enters long mode and calls `rust_main(start_info)`.

core::arch::global_asm!(
    r#"
    .section .text.entry, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    mov esp, offset __stack_top
    mov ebp, ebx
    mov dword ptr [__pml4], offset __pdpt + 3
    mov eax, 0x80000001
    cpuid
    test edx, 1 << 26
    jz 4f
    mov edi, offset __pdpt
    mov eax, 0x83
    xor edx, edx
    mov ecx, 4
1:  mov [edi], eax
    mov [edi + 4], edx
    add eax, 0x40000000
    adc edx, 0
    add edi, 8
    dec ecx
    jnz 1b
    jmp 5f
4:  mov edi, offset __pdpt
    mov eax, offset __pd + 3
    mov ecx, 4
2:  mov [edi], eax
    add eax, 0x1000
    add edi, 8
    dec ecx
    jnz 2b
    mov edi, offset __pd
    mov eax, 0x83
    xor edx, edx
    mov ecx, 2048
3:  mov [edi], eax
    mov [edi + 4], edx
    add eax, 0x200000
    adc edx, 0
    add edi, 8
    dec ecx
    jnz 3b
5:  mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, offset __pml4
    mov cr3, eax
    mov ecx, 0xc0000080
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    or eax, 0x80000001
    mov cr0, eax
    lgdt [__gdt_desc]
    .att_syntax
    ljmp $0x08, $6f
    .intel_syntax noprefix
    .code64
6:  mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rsp, offset __stack_top
    mov edi, ebp
    call rust_main
7:  hlt
    jmp 7b

    .section .rodata
    .p2align 4
__gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
__gdt_desc:
    .word __gdt_desc - __gdt - 1
    .long __gdt

    .section .note.Xen, "a"
    .p2align 2
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long pvh_start32

    .section .bss
    .p2align 12
__pml4: .skip 4096
__pdpt: .skip 4096
__pd:   .skip 4 * 4096
__stack: .skip 65536
__stack_top:
    .code64
"#
);
