# Installation and the package config (imitating oneDNN's config.cmake.in:
# find_dependency for every dependency the exported target links).
include(CMakePackageConfigHelpers)

install(TARGETS funnel EXPORT funnelTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY include/funnel DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES src/templates/reasons.json DESTINATION ${CMAKE_INSTALL_DATADIR}/funnel)

set(FUNNEL_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/funnel)
install(EXPORT funnelTargets NAMESPACE funnel:: DESTINATION ${FUNNEL_CMAKE_DIR})
configure_package_config_file(scripts/cmake/funnelConfig.cmake.in
  ${PROJECT_BINARY_DIR}/funnelConfig.cmake INSTALL_DESTINATION ${FUNNEL_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/funnelConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/funnelConfig.cmake ${PROJECT_BINARY_DIR}/funnelConfigVersion.cmake
  DESTINATION ${FUNNEL_CMAKE_DIR})
