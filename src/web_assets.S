/* web_assets — the chat page's files (web/), compiled into the binary.
 *
 * .incbin copies each file's bytes into .rodata at build time: no code
 * generator, no extra tool, nothing to read at run time. The Makefile makes
 * this object depend on the files in web/; the paths are relative to the
 * directory make runs in (the repository's root). Each file gets a symbol
 * for its first byte and one for the byte past its last (see web.c).
 */
#define ASSET(name, file)                                                                          \
    .globl name;                                                                                   \
    .hidden name;                                                                                  \
    .type name, %object;                                                                           \
    .balign 16;                                                                                    \
name:                                                                                              \
    .incbin file;                                                                                  \
    .size name, . - name;                                                                          \
    .globl name##_end;                                                                             \
    .hidden name##_end;                                                                            \
name##_end:                                                                                        \
    .byte 0

    .section .rodata
ASSET(web_index_html, "web/index.html")
ASSET(web_app_js, "web/app.js")
ASSET(web_app_css, "web/app.css")
ASSET(web_favicon_svg, "web/favicon.svg")

/* No executable stack for the whole program because of this file. */
    .section .note.GNU-stack, "", %progbits
