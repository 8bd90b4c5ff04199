/* See assert.h: declarations only, for a check that never links. */
#pragma once
#include <stddef.h>
void abort(void);
void *malloc(size_t n);
void free(void *p);
