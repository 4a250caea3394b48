// One doctest main shared by every test executable (compiled once, linked into each).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
