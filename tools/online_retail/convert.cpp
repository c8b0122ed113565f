// SPDX-License-Identifier: Apache-2.0
// (being written)
int main() { return 1; }
