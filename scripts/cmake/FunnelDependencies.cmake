# Every dependency comes from a Debian package through find_package
# (scripts/install-deps.sh installs them). None of their types appear in
# funnel's public headers; they are private link dependencies, gathered in
# one INTERFACE target that the layers and the library link privately.
find_package(OpenMP REQUIRED)
find_package(Eigen3 3.3 REQUIRED NO_MODULE)
find_package(dnnl REQUIRED)
find_package(faiss REQUIRED)
find_package(nlohmann_json 3.9 REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(utf8proc REQUIRED IMPORTED_TARGET libutf8proc)
# XLM-R tokenizers (multilingual-e5): the SentencePiece library itself.
pkg_check_modules(sentencepiece REQUIRED IMPORTED_TARGET sentencepiece)
find_package(Threads REQUIRED)

add_library(funnel_deps INTERFACE)
target_link_libraries(funnel_deps INTERFACE
  faiss DNNL::dnnl Eigen3::Eigen nlohmann_json::nlohmann_json PkgConfig::utf8proc PkgConfig::sentencepiece
  OpenMP::OpenMP_CXX Threads::Threads)
# Eigen must never start OpenMP threads on its own: components own their
# thread counts (DESIGN.md), and one setting for every translation unit
# keeps Eigen's inline GEMM identical across the library (no ODR mismatch).
target_compile_definitions(funnel_deps INTERFACE EIGEN_DONT_PARALLELIZE)
install(TARGETS funnel_deps EXPORT funnelTargets)
